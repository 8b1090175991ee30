"""katkit: Katkit-style CI/CD as durable Temporal workflows.

This package is the domain: models, repository file formats, configuration, errors and backends.
Orchestration lives in the top-level ``workflows``, ``activities``, ``worker`` and ``starter``.
"""

__version__ = "0.1.0"
