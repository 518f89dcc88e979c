"""reidcam.reid.engine"""
