"""The Laplace family: laplace-torch's last-layer, all-weights and subnetwork posteriors behind bnnbench's
Method/Predictive contract (`common`, `last_layer`, `all_weights`, `subnetwork`)."""
