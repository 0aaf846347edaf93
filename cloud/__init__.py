"""edgefleet.cloud: training helpers and compression; later the companion service (registry, fleet,
deployments, MQTT ingest, drift monitor). Imports torch; never imported by the edge runtime."""
