"""Recurrent layers: the tanh RNN, LSTM and GRU cells, the unrolled RNN, and the LSTMN.

Each cell is one time step with an explicit backward through every gate; ``RNN``
unrolls any of them over (B, T, D) (stacked, bidirectional, padded by lengths);
``LSTMN`` is an LSTM that reads a tape of all its past states by attention.
``RNN.step`` / ``RNN.step_backward`` step a stacked RNN one time step at a time.

The math is in the step kernels of ``numtransformer.functional.recurrent``
(the fast ones in ``numtransformer.fast.recurrent``); the modules hold the
parameters, check their inputs and call one kernel per step each way.
"""

from .cells import GRUCell, LSTMCell, RNNCell
from .lstmn import LSTMN
from .rnn import RNN

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTMN"]
