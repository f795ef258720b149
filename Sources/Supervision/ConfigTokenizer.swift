/// Splits one configuration line into words, the way a shell would for the simple cases:
///
/// - words are separated by spaces or tabs;
/// - `"..."` keeps spaces; inside it `\"`, `\\`, `\n` and `\t` are escapes, any other backslash
///   is an error (so a Windows-style path does not silently lose characters);
/// - `'...'` keeps everything literally, backslashes included;
/// - quoted and unquoted parts next to each other form one word (`--label="my disk"`);
/// - an unquoted `#` at the start of a word begins a comment that runs to the end of the line.
///
/// There is no variable expansion, globbing or line continuation: what is written is what the
/// server receives in argv.
struct ConfigTokenizer {
    struct Word: Hashable {
        var text: String
        /// 1-based byte column of the word's first character.
        var column: Int
    }

    struct Failure: Error, Equatable {
        var column: Int
        var message: String
    }

    /// The words of `line` (already checked to be UTF-8 without control characters).
    static func words(_ line: [UInt8]) -> Result<[Word], Failure> {
        var words: [Word] = []
        var index = 0
        let space = UInt8(ascii: " "), tab = UInt8(ascii: "\t")
        while index < line.count {
            if line[index] == space || line[index] == tab {
                index += 1
                continue
            }
            if line[index] == UInt8(ascii: "#") { break }
            let start = index
            var bytes: [UInt8] = []
            while index < line.count, line[index] != space, line[index] != tab {
                let byte = line[index]
                if byte == UInt8(ascii: "'") {
                    guard let close = line[(index + 1)...].firstIndex(of: byte) else {
                        return .failure(Failure(column: index + 1, message: "unterminated ' quote; close it with a matching '"))
                    }
                    bytes += line[(index + 1)..<close]
                    index = close + 1
                } else if byte == UInt8(ascii: "\"") {
                    let quoteStart = index
                    index += 1
                    var closed = false
                    while index < line.count {
                        let inner = line[index]
                        if inner == UInt8(ascii: "\"") {
                            closed = true
                            index += 1
                            break
                        }
                        if inner == UInt8(ascii: "\\") {
                            guard index + 1 < line.count else { break }
                            switch line[index + 1] {
                            case UInt8(ascii: "\""): bytes.append(UInt8(ascii: "\""))
                            case UInt8(ascii: "\\"): bytes.append(UInt8(ascii: "\\"))
                            case UInt8(ascii: "n"): bytes.append(UInt8(ascii: "\n"))
                            case UInt8(ascii: "t"): bytes.append(UInt8(ascii: "\t"))
                            default:
                                return .failure(Failure(
                                    column: index + 1,
                                    message: "unknown escape \\\(String(decoding: [line[index + 1]], as: UTF8.self)) in a \"...\" "
                                        + "argument; write \\\\ for a backslash, or use '...' to keep backslashes as they are"))
                            }
                            index += 2
                            continue
                        }
                        bytes.append(inner)
                        index += 1
                    }
                    if !closed {
                        return .failure(Failure(column: quoteStart + 1, message: "unterminated \" quote; close it with a matching \""))
                    }
                } else {
                    bytes.append(byte)
                    index += 1
                }
            }
            words.append(Word(text: String(decoding: bytes, as: UTF8.self), column: start + 1))
        }
        return .success(words)
    }
}
