"""The notebooks' attention browser: pick a token, a layer, a head and the kind of map, and see
which parts of the film that token drew on (:mod:`flamingo_lib.modeling.attention_maps`), beside
the film itself. "evidence" (the default) weights the attention by how much it moved the token's
log-probability; "attention" is where the token's query looked, which barely depends on the token.
"sharpen to pixels" multiplies the map by the token's gradient over the film's pixels
(:mod:`flamingo_lib.modeling.pixel_maps`): the map the pixel pointing game plays on.

The pickers' "mean" is a real option value (``"mean"``), not ``None``: ipywidgets reads ``None``
as "nothing selected" and shows an empty box. The figure is an ``Image`` widget whose PNG is
replaced on each change, not output captured by an ``Output`` widget: capturing ties the widget to
the executing cell's messages, which a headless notebook runner can wait on for ever.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The picker value that averages over every layer or head.
MEAN = "mean"


class AttentionBrowser:
    """Token slider, layer, head and map pickers, and the film beside the token's heatmap.

    Args:
        sample: a study (its first film and its report are shown).
        outline: the finding whose ground-truth mask is outlined and named (None: no outline).

    Attributes:
        position, layer, head, method, sharpen: the controls (``layer.value``: an int or :data:`MEAN`;
            ``method.value``: ``"evidence"`` or ``"attention"``, :data:`~flamingo_lib.evaluation.grounding.MAP_METHODS`;
            ``sharpen.value``: a bool).
        heatmap: the (H, W) map drawn last, of the film's size, summing to 1. title: its title.
        image: the ``Image`` widget showing the film and the heatmap (PNG).
        widget: the box to display.
    """

    def __init__(self, model: Any, processor: Any, sample: Any, outline: str | None = None) -> None:
        import ipywidgets as widgets

        from flamingo_lib.evaluation.grounding import MAP_METHODS
        from flamingo_lib.modeling.attention_maps import capture_attention

        batch, _, self.slot = processor.film_batch(sample)  # the processor's context, the study's first film
        _, self.maps = capture_attention(model, batch)
        self.model, self.batch = model, batch
        # position -> its evidence maps, when first shown (with the pixels' saliency once sharpened)
        self._evidence: dict[int, Any] = {}
        self._saliency: dict[int, Any] = {}  # position -> its pixel saliency, for the raw attention's maps
        ids = batch["input_ids"][0].tolist()
        first = int(batch["media_locations"][0].nonzero()[-1]) + 1  # the first token after the film
        self.tokens = [processor.tokenizer.decode([i]) for i in ids]
        self.sample, self.outline = sample, outline
        self.mask = sample.masks.get(outline) if outline and getattr(sample, "masks", None) else None
        n_layers, n_heads = len(self.maps.xattn), self.maps.xattn[0].shape[1]
        self.position = widgets.IntSlider(value=first, min=first, max=len(ids) - 1, description="token")
        self.layer = widgets.Dropdown(options=[(MEAN, MEAN)] + [(str(i), i) for i in range(n_layers)],
                                      value=MEAN, description="layer")
        self.head = widgets.Dropdown(options=[(MEAN, MEAN)] + [(str(i), i) for i in range(n_heads)],
                                     value=MEAN, description="head")
        self.method = widgets.Dropdown(options=list(MAP_METHODS), value=MAP_METHODS[0], description="map")
        self.sharpen = widgets.Checkbox(value=False, description="sharpen to pixels", indent=False)
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="900px"))
        for control in (self.position, self.layer, self.head, self.method, self.sharpen):
            control.observe(self.draw, names="value")
        self.heatmap, self.title = np.zeros(0), ""
        self.widget = widgets.VBox([widgets.HBox([self.position, self.layer, self.head, self.method, self.sharpen]),
                                    self.image])
        self.draw()

    def current_heatmap(self) -> tuple[np.ndarray, str]:
        """The heatmap (H, W) of the chosen token, layer, head and map over the film, and its title."""
        from flamingo_lib.modeling.attention_maps import capture_evidence, relevance_to_heatmap
        from flamingo_lib.modeling.pixel_maps import pixel_saliency, sharpened_map

        layer = None if self.layer.value == MEAN else self.layer.value
        head = None if self.head.value == MEAN else self.head.value
        position = self.position.value
        if self.method.value == "evidence":
            maps = self._evidence.get(position)
            if maps is None or (self.sharpen.value and maps.pixel_saliency is None):
                # the backward pass goes on to the pixels only once the map is sharpened: one pass gives both
                maps = self._evidence[position] = capture_evidence(self.model, self.batch, [position],
                                                                   to_pixels=self.sharpen.value)
            relevance = maps.evidence(image=self.slot, layer=layer, head=head)
            saliency = None if maps.pixel_saliency is None else maps.pixel_saliency[self.slot]
            kind = "evidence for"
        else:
            relevance = self.maps.token_relevance(0, position, self.slot, layer=layer, head=head)
            if self.sharpen.value and position not in self._saliency:
                self._saliency[position] = pixel_saliency(self.model, self.batch, [position], image=self.slot)
            saliency = self._saliency.get(position)
            kind = "attention of"
        heatmap = relevance_to_heatmap(relevance, self.sample.images[0].size[::-1])
        if self.sharpen.value:
            heatmap = sharpened_map(heatmap, saliency)
        title = (f"{kind} token {self.tokens[position]!r} (position {position}), "
                 f"layer {self.layer.value}, head {self.head.value}" + (", sharpened" if self.sharpen.value else ""))
        return heatmap, title

    def draw(self, *_: Any) -> None:
        """Redraw the film and the heatmap of the current choice into the image widget."""
        import io

        from matplotlib.figure import Figure

        from flamingo_lib.modeling.attention_maps import plot_heatmap

        self.heatmap, self.title = self.current_heatmap()
        figure = Figure(figsize=(9, 4.3))
        film, overlay = figure.subplots(1, 2)
        film.imshow(self.sample.images[0].convert("L"), cmap="gray")
        film.set_title("film", fontsize=9)
        film.axis("off")
        plot_heatmap(self.sample.images[0], self.heatmap, title=self.title, ax=overlay, mask=self.mask,
                     mask_label=self.outline)
        figure.tight_layout()
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=90)
        self.image.value = png.getvalue()


def attention_browser(model: Any, processor: Any, sample: Any, outline: str | None = None) -> Any:
    """The :class:`AttentionBrowser` widget of ``sample`` (outlining the mask of ``outline``)."""
    return AttentionBrowser(model, processor, sample, outline).widget
