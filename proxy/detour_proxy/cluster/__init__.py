"""Living in a cluster: hot reload of config and key files, shared health between proxy pods
(annotation codec, kube API client), and the services that start and stop them.

Import the submodules directly (`cluster.reload`, `cluster.shared_health`, ...): shared health
pulls in the `kubernetes` client, which a standalone proxy never needs.
"""
