"""One module per client format; each exposes `export(servers, options, sink)`."""
