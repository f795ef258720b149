print("limitless-fuzz: not written yet")
