print("limitless-testserver: not written yet")
