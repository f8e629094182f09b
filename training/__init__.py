"""How certified models are made: data, 1-Lipschitz losses and the trainer."""
