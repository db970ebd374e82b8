"""Readers of the field's datasets: MIMIC-CXR-JPG, IU X-Ray (R2Gen annotations and the IU
reports with their MeSH terms), the COCO-style Chex format and DICOM.
"""
