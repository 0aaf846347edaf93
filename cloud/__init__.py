"""edgefleet.cloud: the cloud side. The companion service (settings, tables, API, brokers and MQTT rules,
ingest, drift monitor, registry, rollouts, server) needs no torch; training helpers (training.py,
digits.py) and compression (compress/) do. Never imported by the edge runtime."""
