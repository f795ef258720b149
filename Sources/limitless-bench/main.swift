print("limitless-bench: no benchmarks yet")
