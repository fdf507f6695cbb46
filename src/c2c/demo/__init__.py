"""The offline demo experiment (``c2c demo``): a synthetic world, two tiny LMs that know different things,
fusers trained between them, and every baseline, on held-out entities."""
