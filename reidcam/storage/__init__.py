"""reidcam.storage"""
