"""Qt-free parts of the QSM Processing module: logic, MRML conversion, processes, sample data."""
