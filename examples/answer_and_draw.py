"""Load a pointcopy checkpoint with transformers' Auto classes, answer a question about an image, draw the regions
the model copied.   python examples/answer_and_draw.py [CHECKPOINT] [IMAGE] [QUESTION] [OUT.png]"""
import sys

from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import pointcopy  # noqa: F401  (registers pointcopy checkpoints with the Auto classes)
from pointcopy.demo.render import overlay
from pointcopy.inference import generate

path, image_file, question, out = (sys.argv[1:] + [None] * 4)[:4]
path = path or "src/pointcopy/embedded/assets/shapes-tiny"
model, processor = AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)
image = Image.open(image_file).convert("RGB")
(answer,) = generate(model, processor, [question or "How many red things are there?"], [[image]], max_new_tokens=400)
print(answer.text)
overlay(image, answer.grounded()).save(out or "answer.png")  # each copied region boxed, labelled with its <objN>
