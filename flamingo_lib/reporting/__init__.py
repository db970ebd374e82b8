"""What people look at: figures and the shareable HTML pages of a run and of a reader's studies.
"""
