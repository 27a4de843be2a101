"""Detour's Kubernetes operator: CRDs generated from the routing-config models, rendering of
LLMProvider/RoutingPolicy objects into the proxies' ConfigMap and Secret, status and health roll-up."""
