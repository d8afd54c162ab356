"""diffwave: the DiffWave vocoder and unconditional audio generator (Kong et al., ICLR 2021) on diffcore.

Modules: ``model`` (the network), ``config`` (``DiffWaveConfig`` and its presets), ``mel`` (the ``diffwave`` and
``hifigan`` mel front ends), ``audio`` (reading and writing audio), ``data`` (datasets), ``synth`` (speech-like
synthetic audio), ``task``/``recipe`` (training through diffcore's engine), ``api``/``vocode`` (inference),
``metrics``/``digits`` (evaluation), ``lmnt`` (lmnt-com/diffwave checkpoints), ``cli`` (the ``diffwave`` command).

Quick use::

    import diffwave.api as dw
    wav = dw.load("runs/ljspeech_base").vocode(mel)
"""

__version__ = "0.1.0"
