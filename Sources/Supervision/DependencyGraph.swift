/// Which server needs which: the start order (dependencies first), the stop order (its reverse),
/// and, when a server fails for good, which of the running servers must stop with it.
public struct DependencyGraph: Sendable {
    /// Server names in declaration order.
    public let names: [String]
    /// Each server's direct dependencies, as written.
    public let dependencies: [String: [String]]
    /// Dependencies before dependents. Ties follow the declaration order, so a file without
    /// `depends` lines starts servers exactly in the order it lists them.
    public let startOrder: [String]

    /// Dependents before their dependencies.
    public var stopOrder: [String] { startOrder.reversed() }

    /// Builds the graph, or reports every unknown dependency and every cycle.
    public init(_ servers: [(name: String, dependencies: [String])]) throws(Problems) {
        var table: [String: [String]] = [:]
        var names: [String] = []
        for server in servers where table[server.name] == nil {
            table[server.name] = server.dependencies
            names.append(server.name)
        }
        self.names = names
        self.dependencies = table

        var problems: [Problem] = []
        for name in names {
            for dependency in table[name]! where table[dependency] == nil {
                problems.append(.unknownDependency(
                    server: name, dependency: dependency,
                    suggestion: Suggestion.closest(to: dependency, among: names.filter { $0 != name })))
            }
        }
        let (order, cycles) = DependencyGraph.walk(names: names, table: table)
        problems += cycles.map(Problem.cycle)
        if !problems.isEmpty { throw Problems(problems: problems) }
        self.startOrder = order
    }

    /// Everything that depends on `name`, directly or not, in the order to stop them: when a
    /// server is marked failed these lose a service they need, so they stop first, dependents of
    /// dependents before their dependencies. `name` itself is not included.
    public func dependents(of name: String) -> [String] {
        var affected: Set<String> = [name]
        // The start order puts every dependency before its dependents, so one pass collects the
        // transitive closure.
        for server in startOrder where !affected.contains(server) {
            if dependencies[server, default: []].contains(where: affected.contains) { affected.insert(server) }
        }
        affected.remove(name)
        return stopOrder.filter(affected.contains)
    }

    /// A depth-first walk in declaration order: the post-order is a start order, and an edge back
    /// to a server still on the path closes a cycle. Iterative, so a long chain of dependencies
    /// cannot exhaust the stack.
    private static func walk(names: [String], table: [String: [String]]) -> (order: [String], cycles: [[String]]) {
        enum Mark { case onPath, done }
        var marks: [String: Mark] = [:]
        var order: [String] = []
        var cycles: [[String]] = []
        var seenCycles: Set<[String]> = []
        for root in names where marks[root] == nil {
            var path: [(name: String, next: Int)] = [(root, 0)]
            marks[root] = .onPath
            while let top = path.last {
                let edges = table[top.name]!
                if top.next == edges.count {
                    path.removeLast()
                    marks[top.name] = .done
                    order.append(top.name)
                    continue
                }
                path[path.count - 1].next += 1
                let dependency = edges[top.next]
                guard table[dependency] != nil else { continue }  // reported as unknown
                switch marks[dependency] {
                case .done?:
                    continue
                case .onPath?:
                    let start = path.firstIndex { $0.name == dependency }!
                    let cycle = normalized(path[start...].map(\.name))
                    if seenCycles.insert(cycle).inserted { cycles.append(cycle) }
                case nil:
                    marks[dependency] = .onPath
                    path.append((dependency, 0))
                }
            }
        }
        return (order, cycles)
    }

    /// The same cycle found from another server is reported once: rotate it to start at its
    /// smallest name.
    private static func normalized(_ cycle: [String]) -> [String] {
        let start = cycle.indices.min { cycle[$0] < cycle[$1] }!
        return Array(cycle[start...] + cycle[..<start])
    }

    public enum Problem: Hashable, Sendable, CustomStringConvertible {
        case unknownDependency(server: String, dependency: String, suggestion: String?)
        /// The servers in the cycle, each depending on the next, the last on the first.
        case cycle([String])

        /// The server the problem is reported against.
        public var server: String {
            switch self {
            case .unknownDependency(let server, _, _): return server
            case .cycle(let names): return names[0]
            }
        }

        public var description: String {
            switch self {
            case .unknownDependency(let server, let dependency, let suggestion):
                return "\(server) depends on \(dependency), which no start_server line declares"
                    + (suggestion.map { "; did you mean \($0)?" } ?? "")
            case .cycle(let names) where names.count == 1:
                return "\(names[0]) depends on itself; remove it from its depends line"
            case .cycle(let names):
                return "dependency cycle: " + (names + [names[0]]).joined(separator: " -> ")
                    + "; no start order exists, remove one of these dependencies"
            }
        }
    }

    public struct Problems: Error, Sendable, CustomStringConvertible {
        public var problems: [Problem]
        public var description: String { problems.map(\.description).joined(separator: "\n") }
    }
}
