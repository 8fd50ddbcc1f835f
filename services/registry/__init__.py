"""Registry: folds the model lifecycle log into the registry read model and answers its causes."""
