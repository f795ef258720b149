/// One thing wrong with a configuration file, where it is and what to do about it. Printed the
/// way compilers print errors (`servers.conf:12:5: message`) so editors can jump to it.
public struct ConfigDiagnostic: Hashable, Sendable, CustomStringConvertible {
    public var location: SourceLocation
    public var message: String

    public init(_ location: SourceLocation, _ message: String) {
        self.location = location
        self.message = message
    }

    public var description: String { "\(location): \(message)" }
}

/// Every problem found in a configuration, in file order: a file is checked to the end so that
/// one run shows all its mistakes, not one per run.
public struct ConfigurationErrors: Error, Sendable, CustomStringConvertible {
    public var diagnostics: [ConfigDiagnostic]

    public init(_ diagnostics: [ConfigDiagnostic]) { self.diagnostics = diagnostics }

    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}
