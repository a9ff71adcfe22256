"""Hand-written prompt templates that learners ensemble.

The 60 below are among the 80 ImageNet templates published with CLIP (Radford et al., 2021, the "Prompt
Engineering for ImageNet" notebook): the ensemble whose frozen text features PromptSRC's reference regularises
the learned ones towards ("textual diversity").
"""

#: PromptSRC's template ensemble: 60 of CLIP's ImageNet templates.
PROMPTSRC_TEMPLATES = (
    'a photo of a {}.',
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
)

#: Template groups for MoCoOp's experts when a data set names none (``data.template_groups``): CLIP's ImageNet
#: templates in four kinds of picture (plain photos, poor photos, art, object size), each led by the template its
#: expert starts from.
DEFAULT_TEMPLATE_GROUPS = (
    ('a photo of a {}.', 'a good photo of a {}.', 'a close-up photo of a {}.', 'a bright photo of a {}.'),
    ('a bad photo of a {}.', 'a low resolution photo of a {}.', 'a blurry photo of a {}.', 'a cropped photo of a {}.',
     'a dark photo of a {}.'),
    ('a drawing of a {}.', 'a sketch of a {}.', 'a painting of a {}.', 'a rendering of a {}.', 'a cartoon {}.'),
    ('a photo of a small {}.', 'a photo of a big {}.', 'a photo of the large {}.', 'a photo of the small {}.'),
)
