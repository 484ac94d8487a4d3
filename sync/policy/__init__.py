"""The enforcement bridge: the served catalogue turned into each client's allowlist
(`export`), and a client's configuration or a registry checked against it (`doctor`).

It sits beside the read side: it reads a served view through a `Reader` (never the engine,
never a writer) and writes nothing but the files it is asked to.
"""
