"""shrink compress: the recipe, its steps, the pipeline that runs them and the report."""
