"""QSM Processing: the panel (Widget, ParameterNode) and the Qt-free logic, MRML conversion, processes, sample data."""
