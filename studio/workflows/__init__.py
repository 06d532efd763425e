"""The ComfyUI workflows shipped with the studio (API-format JSON, package data).

See docs/comfyui-workflows.md and studio/providers/comfyui_workflow.py.
"""
