"""A model module that must never be imported by a search or by an untrusted build."""

raise ImportError("recipe_models.poison was imported: a search or an untrusted build ran model code")
