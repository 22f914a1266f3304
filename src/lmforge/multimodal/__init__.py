"""Images and text: the vision-language fusion model, its staged training and its evaluation.

- ``model``: a LLaVA model (CLIP vision encoder, MLP projector, lmforge's or any local decoder)
  from transformers' own classes, or any local vision-language folder as the base;
- ``batches``: image + prompt -> answer examples through the model's processor, for the loop;
- ``train``: ``align`` (encoder + projector, decoder frozen) and ``instruct`` (question/answer
  pairs made from the captions; full or LoRA), both through ``lmforge.train.loop.fit``;
- ``evaluate``, ``caption_metrics``: caption perplexity, ROUGE-L, CIDEr-D, retrieval recall@k
  against the text-only baseline and chance, with an HTML report.
"""
