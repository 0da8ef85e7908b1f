"""Fidelity analysis: identity score, reference checker, prompt coach, pixel lock. Each usable alone.

Everything here runs on the CPU without a model hub; heavy imports (dlib, OpenCV) happen inside the
functions that need them so importing the package stays cheap.
"""
