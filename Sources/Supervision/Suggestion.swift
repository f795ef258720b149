/// "Did you mean ...?": the closest known word to a misspelt one, so an error can name the fix.
enum Suggestion {
    /// The candidate nearest to `word` by edit distance, if it is near enough to be a plausible
    /// typo (at most a third of the word's length, at least 1, at most 3 edits).
    static func closest<C: Collection<String>>(to word: String, among candidates: C) -> String? {
        let word = Array(word.utf8.prefix(128))
        let limit = min(3, max(1, word.count / 3))
        var best: (name: String, distance: Int)?
        for candidate in candidates {
            let distance = editDistance(word, Array(candidate.utf8.prefix(128)))
            if distance <= limit, distance < (best?.distance ?? .max) { best = (candidate, distance) }
        }
        return best?.name
    }

    /// "; did you mean X?" or nothing.
    static func clause<C: Collection<String>>(for word: String, among candidates: C) -> String {
        closest(to: word, among: candidates).map { "; did you mean \($0)?" } ?? ""
    }

    /// Levenshtein distance over bytes, case-insensitive (a wrong case is one kind of typo).
    static func editDistance(_ a: [UInt8], _ b: [UInt8]) -> Int {
        func fold(_ byte: UInt8) -> UInt8 { (65...90).contains(byte) ? byte + 32 : byte }
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                let cost = fold(a[i - 1]) == fold(b[j - 1]) ? 0 : 1
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}
