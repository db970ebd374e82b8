"""The embedded default data: procedural chest films rendered from IU report annotations (or
templated findings), with their reports, labels and finding masks.
"""
