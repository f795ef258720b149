print("limitless-supervisor: not built yet")
