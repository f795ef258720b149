print("limitless-fs: not built yet")
