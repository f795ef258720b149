// limitless-testserver: a server that misbehaves on request, for the supervisor's tests.
import ArgumentParser

LimitlessTestServer.main()
