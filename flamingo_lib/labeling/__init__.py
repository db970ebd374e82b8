"""Reports to labels: the offline CheXpert-style labeler, its version, the findings head's targets,
agreement with the IU annotations and precision/recall/F1.
"""
