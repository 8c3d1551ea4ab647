"""Operations tooling for aviary, nothing a flow run imports: the local Prefect stack, deployments, work pools, notifications."""
