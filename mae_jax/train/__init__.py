"""Training: one loop (``loop``) that every task (``pretrain``, ``classifier``) runs through."""
