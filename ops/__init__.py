"""Prefect operations for aviary: the local stack, deployments, work pools, limits and notifications."""
