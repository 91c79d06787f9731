from llmbatch.engine.cuda_graphs import capture_sizes, fastest_at_least


def test_a_step_runs_the_fastest_graph_that_fits_it():
    sizes = [1, 2, 4, 8, 16, 32, 48]
    # 16 got a slow matmul kernel: steps of 9-16 sequences run padded to 32; 1% apart is noise
    seconds = [5.0, 4.95, 5.1, 5.1, 9.0, 6.0, 6.5]
    assert fastest_at_least(sizes, seconds) == [1, 2, 4, 8, 32, 32, 48]
    # 2 is 10% faster than 1
    assert fastest_at_least(sizes, [5.5, *seconds[1:]])[:2] == [2, 2]


def test_capture_sizes_cover_every_batch_up_to_the_max():
    sizes = capture_sizes(40)
    assert sizes == [1, 2, 4, 8, 16, 32, 40]
    assert fastest_at_least(sizes, [1.0] * len(sizes)) == sizes
