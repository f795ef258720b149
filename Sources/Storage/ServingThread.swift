#if canImport(Glibc)
import Glibc
#endif

/// Starts a plain thread (not a Dispatch or Swift concurrency one: a serving thread owns its
/// queue or socket for its whole life) running `body`; join it with `pthread_join`.
func startServingThread(_ body: @escaping () -> Void) -> pthread_t {
    final class Work {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }
    let context = Unmanaged.passRetained(Work(body)).toOpaque()
    var handle = pthread_t()
    let result = pthread_create(&handle, nil, { context in
        Unmanaged<Work>.fromOpaque(context!).takeRetainedValue().body()
        return nil
    }, context)
    precondition(result == 0, "pthread_create failed: \(result)")
    return handle
}
