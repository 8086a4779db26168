"""Prometheus metrics of `connpin watch` ([metrics] in the config): `settings` parses the table,
`collector` turns the daemon's state and connpin's nft counters into metric families at scrape
time, `publish` serves them over HTTP and writes the node_exporter textfile. docs/metrics.md.
"""
