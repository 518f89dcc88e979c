"""reidcam.detection"""
