"""Model classes for the recipe tests, importable by name so that ckpt.build can import them (when trusted).

Each framework's models are in their own module, imported only by the tests that need that framework.
"""
