"""Durable asynchronous jobs: the ``job`` table (``store``), the runner (``runner``) and the kinds
that plug into it (``reindex``; bulk ``$export`` later). See README.md."""
