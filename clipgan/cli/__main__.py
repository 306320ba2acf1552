from clipgan.cli import app

app()
