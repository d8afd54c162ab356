"""diffwave: the DiffWave vocoder and unconditional audio generator (Kong et al., ICLR 2021) on diffcore.

Modules, by role (diffimage has the same files for the same roles): ``config`` (``DiffWaveConfig`` and its
presets), ``model`` (the network), ``data`` (datasets and file lists), ``recipe`` (the recipe dataclasses and loader),
``task`` (the TrainTask for diffcore's engine), ``sample`` (vocoding and generation with a trained model),
``evaluate`` (resynthesis and generation metrics), ``api`` (``Vocoder``, ``load``, ``available_models`` and
re-exports), ``cli`` (the ``diffwave`` command). Audio-specific: ``mel`` (the ``diffwave`` and ``hifigan`` mel front
ends), ``audio`` (reading and writing audio), ``prior`` (PriorGrad's prior), ``synth`` (speech-like synthetic
audio), ``metrics``/``digits`` (the metrics themselves), ``lmnt`` (lmnt-com/diffwave checkpoints), ``preprocess``
(mel caching), ``quickstart``.

Quick use::

    import diffwave.api as dw
    wav = dw.load("runs/ljspeech_base").vocode(mel)
"""

__version__ = "0.1.0"
