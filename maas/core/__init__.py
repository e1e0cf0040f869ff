"""The core every layer above the handlers shares: the model spec and its file, the model
store reader, request bodies and sampling, names, errors.

Layers (a test reads the imports and enforces it): maas.handlers <- maas.core <- maas.export
<- runtime (server, deploy, load tests, release, monitor, cluster, exports, bench) <- maas.cli.
"""
