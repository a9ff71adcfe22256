"""Cascade Prompt Learning (CasPL, Wu et al., ECCV 2024): the boosting stage, a learner distilled from a larger
teacher (:mod:`~vlprompt.learners.caspl.boosting`, ``caspl_boost``), and its frozen boosting prompts cascaded
under any learner with a text context, a plug-in (:mod:`~vlprompt.learners.caspl.cascade`, ``caspl``)."""
