"""How good a model is: its reconstructions, its samples by the judge, and bits per dimension."""
