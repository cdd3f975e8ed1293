import gc, sys, runpy
gc.freeze() if sys.argv[1] == "freeze" else None
if sys.argv[1] == "off": gc.disable()
sys.argv = ["steady.py", "1000", "8"]
runpy.run_path("scratch/steady.py", run_name="__main__")
print(gc.get_count(), len(gc.get_objects()))
