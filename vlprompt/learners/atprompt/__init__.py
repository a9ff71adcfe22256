"""ATPrompt (Li et al., "Advancing Textual Prompt Learning with Anchored Attributes", ICCV 2025): learned attribute
tokens anchored on attribute words, before any learner's text context, a plug-in
(:mod:`~vlprompt.learners.atprompt.plugin`, ``atprompt``)."""
