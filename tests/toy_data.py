"""Toy image/report pairs for fast tests: the drawing and the report agree."""

from __future__ import annotations

from PIL import Image, ImageDraw

# Four toy "studies": the image drawing and the report agree, so the model has something to learn.
TOY_STUDIES = [
    ("normal", "Heart size is normal. Lungs are clear."),
    ("left_effusion", "Small left pleural effusion."),
    ("right_nodule", "Nodule in the right upper lobe."),
    ("cardiomegaly", "The heart is enlarged."),
]


def toy_radiograph(kind: str, size: int = 224) -> Image.Image:
    """A crude frontal chest drawing (dark lungs, bright heart) with the finding ``kind``."""
    image = Image.new("L", (size, size), 200)
    draw = ImageDraw.Draw(image)
    s = size / 224
    draw.ellipse([30 * s, 40 * s, 105 * s, 190 * s], fill=50)  # image-left lung (patient right)
    draw.ellipse([119 * s, 40 * s, 194 * s, 190 * s], fill=50)
    heart = 45 if kind == "cardiomegaly" else 28
    draw.ellipse([(112 - heart) * s, 120 * s, (112 + heart + 10) * s, 185 * s], fill=170)
    if kind == "left_effusion":  # patient left = image right on a PA view
        draw.rectangle([119 * s, 160 * s, 194 * s, 190 * s], fill=190)
    if kind == "right_nodule":
        draw.ellipse([55 * s, 70 * s, 70 * s, 85 * s], fill=230)
    return image
